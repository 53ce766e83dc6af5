"""`sentiment-score`, batch scoring of files too big to hold in memory (see cli.py for the commands).

    cli.py         options -> `Job`, the model lookup, the exit codes
    job.py         `Job`: the options, checked once; what a resume must match
    readers.py     streaming readers (JSONL, CSV, Parquet, text) -> `InputRow`s
    scoring.py     raw values -> result rows (the one path both engines take)
    writers.py     crash-safe writers (JSONL, CSV, Parquet)
    checkpoint.py  OUTPUT.checkpoint.json, what `--resume` continues from
    summary.py     the tally of rows, errors and labels; the end-of-job summary
    columns.py     output columns and their Arrow types
    local.py       the local engine's streaming loop
    ray.py         the Ray Data engine and `SentimentPredictor` (Ray imported only when used)

Imports run one way: cli -> local/ray -> job, scoring, readers, writers -> columns, errors.
"""
