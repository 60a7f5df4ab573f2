"""The requests checks: not written yet (issue 15 is open); the command says so and refuses
to run these rules rather than pass them."""
