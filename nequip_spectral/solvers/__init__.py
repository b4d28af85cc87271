"""How the heads are fitted: the closed form (:mod:`.closed_form`, an exact ridge solve from one
pass over the data) and gradient descent (:mod:`.sgd`, each head kept at its own best epoch)."""
