"""Building blocks shared by the API and the jobs: settings, storage, data, tracking, cluster."""
