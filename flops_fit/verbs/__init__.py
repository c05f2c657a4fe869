"""The verbs built on the stages: estimate, status, confirm (forward checks), transfer
(learning-rate transfer) and compare."""
