"""What makes nightly runs safe: atomic writes, the lock, the ledger."""
