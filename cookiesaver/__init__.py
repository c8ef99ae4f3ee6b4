"""cookiesaver: the pixel-and-push server behind a marketing platform's pixel domain."""
