"""`vsqe bench`: model throughput against the machine's own measured peaks and the reference path."""
