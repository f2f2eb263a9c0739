"""HETAL data owner: extractors, features, keys, encryption and the replies to the trainer."""
