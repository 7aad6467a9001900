"""Evolution API: the HTTP client, its errors, and webhook deliveries read into our terms."""
