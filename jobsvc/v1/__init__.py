"""Generated from protos/jobsvc/v1/ by scripts/gen-protos: never edit these modules by hand."""
