"""The application layer between the API and the stores: fine-tune, evaluation and benchmark jobs
(``jobs``), sweeps (``sweeps``), the model registry workflows and promotion state machine. Takes
typed values from the routes, never a request body; imports no web framework."""
