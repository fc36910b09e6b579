"""Reports: experiments behind the paper's tables and figures, plots."""
