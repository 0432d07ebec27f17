"""A small English–Chichewa bitext (Genesis 1, from the demo's Bible build) for fast tests."""

PAIRS = [
    ("Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.",
     "In the beginning God created the heaven and the earth."),
    ("Dziko lapansi ndipo linali lopanda kanthu; ndipo mdima unali pamwamba pa nyanja; ndipo "
     "mzimu wa Mulungu unalinkufungatira pamwamba pa madzi.",
     "And the earth was without form, and void; and darkness was upon the face of the deep. "
     "And the Spirit of God moved upon the face of the waters."),
    ("Ndipo anati Mulungu, Kuyere; ndipo kunayera.",
     "And God said, Let there be light: and there was light."),
    ("Ndipo Mulungu anaona kuyera kuti kunali kwabwino; ndipo Mulungu analekanitsa kuyera ndi "
     "mdima.", "And God saw the light, that it was good: and God divided the light from the "
     "darkness."),
    ("Ndipo Mulungu anatcha kuyera Usana, ndi mdima anautcha Usiku. Ndipo panali madzulo ndipo "
     "panali m'mawa, tsiku loyamba.", "And God called the light Day, and the darkness he called "
     "Night. And the evening and the morning were the first day."),
    ("Ndipo anati Mulungu, Pakhale thambo pakati pa madzi, ligawanitse madzi ndi madzi.",
     "And God said, Let there be a firmament in the midst of the waters, and let it divide the "
     "waters from the waters."),
    ("Ndipo Mulungu anapanga thambo, nagawanitsa madzi a pansi pa thambo ndi madzi a pamwamba "
     "pa thambo: ndipo kunatero.", "And God made the firmament, and divided the waters which "
     "were under the firmament from the waters which were above the firmament: and it was so."),
    ("Ndipo Mulungu anacha thambo Kumwamba. Ndipo panali madzulo ndipo panali m'mawa, tsiku "
     "lachiwiri.", "And God called the firmament Heaven. And the evening and the morning were "
     "the second day."),
] * 4
