"""AgentStream."""
