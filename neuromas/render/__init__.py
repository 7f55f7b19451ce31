"""Plan -> what people read: a text summary (`text`) and a graphviz picture (`dot`)."""
