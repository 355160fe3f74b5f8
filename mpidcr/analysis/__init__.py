"""Looking at models: science evaluation against held-out visits, summaries and quicklook PNGs."""
