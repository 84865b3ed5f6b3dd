"""Entry points and wiring: the `sharpen` CLI, tasks, run directories, presets and studies."""
