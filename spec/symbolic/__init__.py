"""z3 model checking of the block pool: bounded counterexamples and induction proofs."""
