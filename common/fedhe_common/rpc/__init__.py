"""gRPC plumbing shared by the services: servers, channels, auth, errors, retries."""
