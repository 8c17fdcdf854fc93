"""Remote providers: Runware and Black Forest Labs, each a Backend over one shared HTTP transport."""
