"""The billing portal: the pages a billing account's people use (``meter portal``)."""
