"""The whole chain (`bash run_all.sh`): the steps of a preset and the loop that runs them."""
