"""The lowest layer: files, records, processes, provenance and tracking that every other package shares.

    from sharpen.errors import UsageError                  # a user's mistake: one line, exit status 2
    from sharpen.runs.files import write_text_atomic, looks_like_path
    from sharpen.runs.records import RecordWriter, ShardedRecords, read_records, record_key
    from sharpen.runs.processes import current_shard, is_main_process
    from sharpen.runs.provenance import environment, model_revision

    files.py       atomic writes, output-dir checks, the "is this a local path" rule
    locks.py       hold_run_dir: one writer per run directory (flock), the sharpen-directory marker
    records.py     per-sample JSONL: append + flush + fsync, resume, torn-line repair, part files per process
    processes.py   rank, world size, barrier and gather under accelerate launch
    provenance.py  environment() (sharpen version, git commit, library versions), model_revision
    tracking.py    WandbConfig and start_run: a wandb run, or a null run when logging is off
    plugins.py     the `sharpen.methods` / `sharpen.tasks` entry points of other installed distributions

It imports only sharpen.errors, so every other layer can use it without a cycle.
"""
