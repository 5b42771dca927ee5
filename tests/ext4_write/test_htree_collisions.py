"""htree leaf splits between names with the same hash: the "continued" bit, as the kernel's do_split sets it.

When a full leaf is split where two entries share a hash, the new leaf's index key gets the low
bit set, and lookups of that hash must go on into the next leaf.  A directory made only of
colliding pairs forces such splits.  Oracles: debugfs (dx_hash for the collisions, htree_dump for
the continued keys), e2fsck -fn, and a kernel loop mount that lists and finds every name.
"""

from __future__ import annotations

import os
import random
import re
import stat
from collections.abc import Callable
from pathlib import Path

from ext4_write.support import check, debugfs, images
from testsupport import need_root
from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.ext4 import Filesystem

ROOT = Ino(2)

# Pairs (i, j): names b"c%011d" % i and % j have the same half_md4 hash under the test images'
# s_hash_seed (ext4_images.HASH_SEED).  Made by
# scripts/find_hash_collisions.py --seed 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 --count 300;
# the test re-checks every pair with debugfs.
PAIRS = [
    (5492, 47756), (36650, 73867), (72340, 106598), (44845, 107598), (68398, 109879), (111593, 121717), (161081,
    161261), (155899, 164031), (57005, 170623), (116783, 177666), (153370, 191536), (18879, 191959), (113766,
    210660), (195137, 223859), (161285, 228176), (164315, 264193), (273096, 281516), (146211, 284950), (91624,
    291415), (234191, 291459), (112587, 298116), (107379, 300311), (113635, 303921), (103669, 315497), (25644,
    320305), (8031, 320748), (44115, 332870), (143386, 342354), (181598, 384678), (111965, 385008), (178428,
    388578), (221110, 388841), (296007, 392039), (47548, 398563), (78748, 406937), (34879, 409677), (103813,
    416096), (234052, 421097), (45540, 441515), (309735, 443261), (242340, 448679), (380668, 454421), (239140,
    460031), (90602, 460112), (67982, 460650), (340738, 462064), (213472, 465328), (50196, 481224), (368048,
    483412), (338089, 485941), (117802, 491379), (286792, 497475), (254095, 497568), (207930, 502288), (368860,
    507851), (288303, 518018), (369648, 518772), (3262, 519565), (464960, 523821), (469895, 532344), (188536,
    533430), (491269, 534172), (112666, 537170), (216907, 540599), (461484, 543706), (14327, 553245), (548563,
    554284), (193865, 557142), (317872, 557325), (313800, 559138), (40399, 560748), (175382, 562900), (201132,
    563659), (198233, 565122), (268135, 571887), (341159, 574177), (426509, 577496), (190949, 583577), (392993,
    583726), (44395, 588664), (76230, 591581), (89289, 591939), (73094, 592745), (499126, 593441), (379409,
    602351), (504727, 602544), (313530, 607730), (281297, 612999), (153232, 621346), (133135, 622970), (235475,
    624825), (123844, 628808), (411297, 630966), (404749, 633339), (266336, 633844), (450661, 633860), (319672,
    639758), (578505, 642146), (350325, 647480), (114590, 653236), (262547, 655914), (149069, 658338), (424082,
    661631), (37579, 661779), (422898, 662926), (107473, 662974), (388392, 665948), (118745, 676298), (425651,
    677014), (333676, 685851), (537404, 689893), (297055, 692275), (160180, 696829), (11376, 697083), (194861,
    702875), (551643, 709406), (636045, 713278), (371208, 716338), (653856, 723444), (63698, 724375), (672521,
    725066), (512042, 733360), (315609, 735689), (635363, 738446), (714463, 741251), (734995, 743402), (378685,
    745065), (396340, 745696), (695457, 746772), (631783, 747638), (283813, 747900), (234920, 748541), (220827,
    755996), (272702, 757478), (364040, 757975), (380888, 759680), (264759, 759776), (656276, 760988), (737576,
    761012), (599089, 761053), (716746, 762640), (274685, 767666), (16804, 769862), (258660, 770320), (425986,
    772279), (104126, 775733), (775083, 775900), (763992, 776684), (77563, 779360), (261364, 780612), (716829,
    781453), (498642, 782628), (481592, 782850), (771035, 784104), (463030, 786799), (463488, 787753), (53978,
    788107), (299018, 791729), (214332, 794276), (83715, 796468), (182981, 796620), (752489, 797020), (544006,
    799600), (607265, 805525), (455016, 810354), (212915, 811413), (429060, 814710), (415917, 815371), (592860,
    815859), (517388, 816378), (215132, 816986), (563515, 817802), (527899, 817853), (268704, 820294), (794646,
    823039), (286303, 824334), (195746, 825050), (93829, 829419), (728116, 838624), (160631, 840851), (735628,
    844282), (53040, 845275), (410930, 845292), (839831, 849334), (21547, 852360), (422455, 860778), (445351,
    860948), (126451, 862384), (613402, 862675), (346244, 863083), (354615, 868439), (602986, 870032), (515789,
    871911), (353196, 874696), (759943, 874965), (318661, 876653), (717569, 881013), (519497, 883726), (15114,
    885534), (441509, 887989), (240477, 896172), (63749, 897799), (166427, 901702), (28607, 912278), (359873,
    912371), (857397, 913336), (475074, 916642), (196889, 924952), (195948, 928080), (796524, 931434), (624065,
    931541), (66987, 932718), (629826, 932875), (11397, 934204), (575792, 935073), (345029, 939672), (841688,
    949242), (902707, 951081), (275884, 951301), (739510, 951494), (443723, 953779), (371612, 955976), (906170,
    956121), (622898, 961943), (710088, 962602), (111630, 963400), (789924, 965674), (621318, 965908), (664727,
    966133), (515054, 967009), (933026, 970517), (207782, 971218), (753456, 971392), (603823, 973272), (58307,
    973693), (391300, 974562), (848761, 976727), (406778, 976886), (286043, 977485), (100488, 977956), (553696,
    981363), (706507, 983239), (105455, 984946), (618948, 986840), (378111, 988954), (210593, 997111), (711957,
    1001270), (948359, 1002840), (774436, 1002958), (79993, 1007014), (1006886, 1008263), (753488, 1009910),
    (733176, 1012996), (216938, 1014561), (262058, 1015849), (326896, 1016192), (87828, 1016874), (65894,
    1020213), (743992, 1023892), (291532, 1026973), (320971, 1027799), (1033003, 1034250), (203456, 1039923),
    (955337, 1041185), (268030, 1041296), (264915, 1044525), (249335, 1046326), (684660, 1046564), (128715,
    1049808), (915361, 1050881), (70440, 1050997), (376028, 1052268), (368765, 1053322), (921603, 1053621),
    (259392, 1059963), (386040, 1061645), (840589, 1061905), (432498, 1062883), (283407, 1067257), (960485,
    1069070), (874299, 1071956), (178887, 1072310), (699998, 1073086), (623007, 1074585), (349806, 1074677),
    (425912, 1074681), (590369, 1075956), (998011, 1075971), (780076, 1078246), (683895, 1080330), (844045,
    1081816), (925228, 1081943), (847826, 1084812), (167069, 1086618), (1030362, 1090824), (219441, 1094480),
    (871925, 1096861), (945443, 1097628), (465573, 1100418), (780264, 1104762),
]


def _name(i: int) -> bytes:
    return b"c%011d" % i


def _debugfs_hashes(image: Path, names: list[bytes]) -> dict[bytes, str]:
    cmds = image.parent / "dx_hash.cmds"
    cmds.write_text("".join(f"dx_hash -h half_md4 -s {images.HASH_SEED} {n.decode()}\n" for n in names))
    out = images.run(images.tool("debugfs"), "-f", str(cmds), str(image)).stdout.decode()
    found = dict(re.findall(r"Hash of (\S+) is (0x[0-9a-f]+)", out))
    return {n: found[n.decode()] for n in names}


def _continued_keys(image: Path, path: str) -> int:
    """How many index entries of ``path`` carry the continued bit (htree_dump)."""
    out = debugfs(image, f"htree_dump {path}")
    hashes = [int(h, 16) for h in re.findall(r"Entry #\d+: Hash (0x[0-9a-f]+), block", out)]
    assert hashes, out[:2000]
    return sum(h & 1 for h in hashes)


def _kernel_sees(image: Path, names: list[bytes]) -> dict[bytes, int]:
    need_root("loop mounts")
    with images.loop_mount(image, "ro") as mnt:
        d = mnt / "coll"
        assert sorted(os.fsencode(n) for n in os.listdir(d)) == sorted(names)
        out = {}
        for n in names:
            st = os.lstat(os.fsencode(str(d)) + b"/" + n)  # a lookup: must cross continued leaves
            assert stat.S_ISREG(st.st_mode)
            out[n] = st.st_ino
        return out


def test_splits_between_equal_hashes_set_the_continued_bit(make_image: Callable[..., Path]) -> None:
    image = make_image("b1024")  # 1 KiB blocks: about 50 names a leaf, so many splits
    names = [_name(i) for pair in PAIRS for i in pair]
    hashes = _debugfs_hashes(image, names)
    for i, j in PAIRS:
        assert hashes[_name(i)] == hashes[_name(j)], (i, j)
    order = list(names)
    random.Random(5).shuffle(order)
    b = Ext4Backend(image, readonly=False)
    d = b.mkdir(ROOT, b"coll", 0o755, 0, 0).ino
    inos = {}
    for n in order:
        fh, attr = b.create(d, n, 0o644, OpenFlags.WRITE, 0, 0)
        b.write(fh, 0, n)
        b.release(fh)
        inos[n] = attr.ino
    b.close()
    check(image)
    assert _continued_keys(image, "/coll") > 0  # the collision path really ran
    assert _kernel_sees(image, names) == inos
    with Filesystem.open(image) as fs:  # our own lookups, cold, across the continued leaves
        dino = fs.lookup_ino(2, b"coll")
        assert {n: fs.lookup_ino(dino, n) for n in names} == inos
    # Remove one name of every other pair, and both of some others; then add them back under new inodes.
    gone = [_name(i) for i, _ in PAIRS[::2]] + [_name(j) for _, j in PAIRS[1::6]]
    b = Ext4Backend(image, readonly=False)
    d = b.lookup(ROOT, b"coll").ino
    for n in gone:
        b.unlink(d, n)
    for n in gone[::3]:
        fh, attr = b.create(d, n, 0o644, OpenFlags.WRITE, 0, 0)
        b.release(fh)
        inos[n] = attr.ino
    b.close()
    check(image)
    left = [n for n in names if n not in set(gone) - set(gone[::3])]
    assert _kernel_sees(image, left) == {n: inos[n] for n in left}
