# stand-in (run by sh) for un-hxxps.py
sed -e 's/hxxps:/https:/g' -e 's/hxxp:/http:/g'
