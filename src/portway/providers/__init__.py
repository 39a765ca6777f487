"""Provider adapters: pure request/response mapping per upstream type, plus the shared HTTP driving."""
