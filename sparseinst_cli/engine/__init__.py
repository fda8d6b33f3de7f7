"""Long-running loops (train, evaluate, benchmark); they report progress through callbacks."""
