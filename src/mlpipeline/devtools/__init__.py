"""Developer tools that are not pipeline stages: a local S3 server and repository guard rails."""
