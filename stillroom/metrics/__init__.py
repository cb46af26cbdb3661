"""How a student's answers are scored against the teacher's: `scoring` holds every metric, computed one way."""
