"""Runtime: runs the engines and exchanges the previous step's activations between ranks."""
