"""mergekit's YAML dialect, run out of core on Hugging Face folders (docs/merging.md, "Coming from mergekit")."""
