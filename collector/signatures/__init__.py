"""People's electronic signatures: a password re-entered, a printed name, a meaning, bound to a content hash.

Kept apart from the site's bundle key: these say who vouched for a record, not which laptop made a file.
"""
