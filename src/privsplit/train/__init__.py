"""privsplit.train."""
