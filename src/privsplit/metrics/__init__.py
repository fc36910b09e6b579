"""privsplit.metrics."""
