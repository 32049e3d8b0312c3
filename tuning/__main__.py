"""`python -m keras_cnn.tuning FOLDER`: run this process's part of the distributed search in FOLDER.

KERASTUNER_TUNER_ID ("chief", or a worker's own id such as "tuner3"), KERASTUNER_ORACLE_IP
and KERASTUNER_ORACLE_PORT say which part and where the chief listens; FOLDER (shared by
every machine) holds the settings the search was started with (see tuning.search).
"""
import sys

from keras_cnn.tuning.search import join

if len(sys.argv) != 2:
    sys.exit("usage: python -m keras_cnn.tuning SEARCH_FOLDER")
join(sys.argv[1])
