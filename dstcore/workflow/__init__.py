"""Stage 9, workflow: the experiment grid and the config checks behind workflow/rules/common.smk."""
