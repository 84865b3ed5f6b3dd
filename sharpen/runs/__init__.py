"""The lowest layer: files, records, processes and provenance that every other package shares.

    from sharpen.errors import UsageError                  # a user's mistake: one line, exit status 2
    from sharpen.runs.files import write_text_atomic, looks_like_path
    from sharpen.runs.records import RecordWriter, ShardedRecords, read_records, record_key
    from sharpen.runs.processes import current_shard, is_main_process
    from sharpen.runs.provenance import environment, model_revision

It imports nothing from the other packages (sampling, rl_baselines, analysis, experiments),
so each of them can use it without a cycle.
"""
