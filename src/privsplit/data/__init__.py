"""privsplit.data."""
