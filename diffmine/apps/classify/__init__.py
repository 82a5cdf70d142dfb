"""Classification by typicality (argmax over labels of T(x|c)), with the label audit."""
