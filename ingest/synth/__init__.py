"""mvm ingest/synth package."""
