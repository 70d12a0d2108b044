"""ClickHouse analytics: the projection, the store adapter and the analyst's query path."""
