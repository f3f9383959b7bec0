"""The Tune trial actor: builds and fits one Ray Train trainer per trial, with its rendezvous."""
