"""Memory: device profiles, the job planner and the guard that holds a job to its budget."""
