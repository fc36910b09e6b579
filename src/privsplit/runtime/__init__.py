"""privsplit.runtime."""
