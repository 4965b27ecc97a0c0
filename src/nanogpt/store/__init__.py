"""What lives on disk besides checkpoints: run folders and best.json (runs), atomic writes, locks on
folders, bounded reads of JSON and streams (files)."""
