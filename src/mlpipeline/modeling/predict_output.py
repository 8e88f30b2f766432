"""``mlpipeline-predict``'s table, written as the predictions come: CSV (a file or stdout) or
Parquet (``--output x.parquet``), so memory holds one batch of rows whatever the image count.

Columns: ``path``, ``label``, ``probability`` (the top class), then with ``--topk K``
``label_2``, ``probability_2`` ... ``label_K``, ``probability_K``. A file is written aside and
renamed when every image is done (``mlpipeline.core.atomic.stream``): a run that fails leaves the
previous file, never half a table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, TextIO

from mlpipeline.core import atomic

PARQUET_SUFFIX = ".parquet"
ROW_GROUP_ROWS = 65536  # rows per Parquet row group: readers skip by group, memory holds one
Row = tuple[str, list[str], list[float]]  # path, top labels, their probabilities


def columns(topk: int) -> list[str]:
    names = ["path", "label", "probability"]
    for rank in range(2, topk + 1):
        names += [f"label_{rank}", f"probability_{rank}"]
    return names


class CsvRows:
    """Rows as CSV on a text stream, probabilities with 6 decimals."""

    def __init__(self, stream: TextIO, topk: int) -> None:
        self.stream, self.writer = stream, csv.writer(stream, lineterminator="\n")
        self.writer.writerow(columns(topk))

    def write(self, rows: list[Row]) -> None:
        for path, labels, probabilities in rows:
            cells = [path]
            for label, probability in zip(labels, probabilities, strict=True):
                cells += [label, f"{probability:.6f}"]
            self.writer.writerow(cells)
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class ParquetRows:
    """Rows as a Parquet file: strings and float64, a row group per ``ROW_GROUP_ROWS`` rows."""

    def __init__(self, sink: BinaryIO, topk: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.topk = pa, topk
        fields = [("path", pa.string())]
        for name in columns(topk)[1:]:
            fields.append((name, pa.string() if name.startswith("label") else pa.float64()))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(sink, self.schema)
        self.pending: list[Row] = []

    def write(self, rows: list[Row]) -> None:
        self.pending += rows
        if len(self.pending) >= ROW_GROUP_ROWS:
            self._flush()

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def _flush(self) -> None:
        if not self.pending:
            return
        data: dict[str, list] = {"path": [path for path, _, _ in self.pending]}
        for rank in range(self.topk):
            suffix = f"_{rank + 1}" if rank else ""
            data[f"label{suffix}"] = [labels[rank] for _, labels, _ in self.pending]
            data[f"probability{suffix}"] = [probabilities[rank] for _, _, probabilities in self.pending]
        self.writer.write_table(self.pa.table(data, schema=self.schema))
        self.pending = []


@contextmanager
def open_rows(output: str | None, stdout: TextIO, topk: int) -> Iterator[CsvRows | ParquetRows]:
    """A writer of the table to ``output`` (None: CSV on ``stdout``), the file in place only once
    the block succeeds."""
    if output is None:
        rows = CsvRows(stdout, topk)
        yield rows
        rows.close()
        return
    with atomic.stream(output) as sink:
        if output.lower().endswith(PARQUET_SUFFIX):
            rows = ParquetRows(sink, topk)
        else:
            rows = CsvRows(io.TextIOWrapper(sink, encoding="utf-8", newline="", write_through=True), topk)
        yield rows
        rows.close()
