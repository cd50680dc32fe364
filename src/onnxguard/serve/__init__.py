"""The inference server: who may call it, what it answers, and what it records (see DESIGN.md section 4)."""
