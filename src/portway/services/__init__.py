"""Services: the use cases the API calls, one module per endpoint family (chat today)."""
