# stand-in (run by sh) for anti-non-ubc.py: drop the [External] subject tag and the warning banner
sed -e 's/^Subject: \[External\] /Subject: /' -e '/^\[CAUTION: Non-UBC Email\]$/d'
