"""The results stage: tables, figures and a summary built from the result records that the other
stages append to `results/records/*.jsonl` (DESIGN §4). Run it with `python -m results`."""
