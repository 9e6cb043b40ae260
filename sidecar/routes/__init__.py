"""The HTTP API's routes, one router per concern; what they share comes from `app.state` (`deps`)."""
