"""COCO's object vocabulary as the object lexicon (:mod:`seed.lexicon`) reads it: the 80
categories, their synonyms, phrases that name no object, irregular plurals, and the function
and colour words that decide whether "orange" is the fruit."""

# COCO's 80 instance categories, in the order of their category ids.
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

# Other names for each category (written in the singular; plurals are derived).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "infant",
        "guy", "lady", "gentleman", "teenager", "teen", "adult", "pedestrian", "crowd",
        "player", "skier", "snowboarder", "surfer", "skateboarder", "biker", "cyclist",
        "rider", "driver", "passenger", "batter", "catcher", "umpire",
        "spectator", "tourist", "worker", "chef", "officer", "policeman", "soldier",
        "student", "customer", "vendor", "farmer", "fisherman", "athlete", "groom", "bride",
    ),
    "bicycle": ("bike", "mountain bike", "tandem bicycle"),
    "car": ("automobile", "sedan", "suv", "taxi", "cab", "jeep", "van", "minivan",
            "police car", "sports car", "race car", "hatchback"),
    "motorcycle": ("motorbike", "motor bike", "motor cycle", "dirt bike", "scooter", "moped"),
    "airplane": ("plane", "aeroplane", "airliner", "jetliner", "jet", "aircraft",
                 "passenger jet", "jumbo jet"),
    "bus": ("school bus", "double decker", "double decker bus", "trolley bus", "minibus"),
    "train": ("locomotive", "tram", "streetcar", "subway train", "train car",
              "passenger train", "freight train"),
    "truck": ("lorry", "pickup", "pickup truck", "fire truck", "firetruck", "dump truck",
              "tow truck", "semi truck", "truck bed"),
    "boat": ("ship", "yacht", "sailboat", "canoe", "kayak", "ferry", "raft", "dinghy",
             "rowboat", "row boat", "motorboat", "speedboat", "gondola", "tugboat", "jet ski"),
    "traffic light": ("traffic signal", "stop light", "stoplight", "traffic lamp"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": (),
    "bench": ("park bench", "pew"),
    "bird": ("pigeon", "dove", "seagull", "gull", "duck", "goose", "swan", "parrot", "eagle",
             "hawk", "owl", "sparrow", "crow", "pelican", "penguin", "chicken", "hen",
             "rooster", "flamingo", "heron", "robin", "finch", "ostrich"),
    "cat": ("kitten", "kitty", "feline", "tabby"),
    "dog": ("puppy", "pup", "doggy", "doggie", "hound", "canine", "terrier", "poodle",
            "labrador", "retriever", "bulldog", "sheepdog", "sheep dog", "dalmatian",
            "chihuahua", "beagle", "collie"),
    "horse": ("pony", "foal", "stallion", "mare", "colt"),
    "sheep": ("lamb", "ram", "ewe"),
    "cow": ("cattle", "bull", "calf", "ox", "heifer"),
    "elephant": (),
    "bear": ("polar bear", "grizzly", "grizzly bear", "brown bear", "black bear"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("back pack", "rucksack", "knapsack"),
    "umbrella": ("parasol",),
    "handbag": ("purse", "hand bag", "pocketbook"),
    "tie": ("necktie", "bow tie"),
    "suitcase": ("luggage", "suit case"),
    "frisbee": ("flying disc",),
    "skis": ("ski",),
    "snowboard": ("snow board",),
    "sports ball": ("ball", "soccer ball", "tennis ball", "beach ball", "golf ball"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt", "baseball mitt"),
    "skateboard": ("skate board", "longboard"),
    "surfboard": ("surf board", "paddleboard", "paddle board", "bodyboard",
                  "boogie board"),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "bottle": ("water bottle", "wine bottle", "beer bottle"),
    "wine glass": ("wineglass", "goblet"),
    "cup": ("mug", "teacup", "tea cup", "coffee cup", "paper cup"),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("sub", "burger", "hamburger", "cheeseburger", "panini"),
    "orange": ("tangerine", "mandarin orange", "clementine"),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog", "frankfurter"),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake", "cheesecake"),
    "chair": ("armchair", "stool", "high chair", "highchair"),
    "couch": ("sofa", "loveseat", "love seat", "futon", "settee"),
    "potted plant": ("plant", "houseplant", "house plant", "flowerpot", "flower pot"),
    "bed": ("bunk bed",),
    "dining table": ("table", "kitchen table", "coffee table", "picnic table",
                     "tablecloth"),
    "toilet": ("urinal", "toilet seat"),
    "tv": ("television", "monitor", "tv screen"),
    "laptop": ("laptop computer",),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller", "game controller"),
    "keyboard": (),
    "cell phone": ("cellphone", "phone", "mobile phone", "smartphone", "smart phone",
                   "iphone", "telephone"),
    "microwave": ("microwave oven",),
    "oven": ("stove", "stovetop"),
    "toaster": ("toaster oven",),
    "sink": (),
    "refrigerator": ("fridge", "freezer"),
    "book": ("textbook", "cookbook"),
    "clock": ("clock tower", "alarm clock"),
    "vase": (),
    "scissors": ("scissor",),
    "teddy bear": ("teddy", "teddybear", "stuffed animal", "stuffed bear"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer", "blow drier", "blowdryer"),
    "toothbrush": ("tooth brush",),
}

# Phrases that contain an object word but do not assert the object.
NON_OBJECT_PHRASES: tuple[str, ...] = (
    "ski slope", "ski lift", "ski resort", "ski pole", "ski area", "ski run", "ski trail",
    "bus stop", "bus station", "train station", "train track", "train platform",
    "toilet paper", "flower bed", "river bed", "bed of", "bird eye view", "mouse pad",
)

IRREGULAR_PLURALS: dict[str, str] = {
    "people": "person", "children": "child", "mice": "mouse", "geese": "goose",
    "oxen": "ox", "teeth": "tooth", "feet": "foot", "knives": "knife", "calves": "calf",
    "buses": "bus", "busses": "bus", "halves": "half", "shelves": "shelf",
    "leaves": "leaf", "loaves": "loaf", "wolves": "wolf", "cacti": "cactus",
}

# Words after which a bare "orange" is still the fruit (anything else: the colour).
FUNCTION_WORDS = frozenset(
    "a an the and or but nor of on in at to by for from with without into onto near next "
    "beside besides behind under over above below between among along across against "
    "around inside outside atop is are was were be been being sits sit sitting lies lie "
    "lying rests rest resting stands standing placed that which who while as than there "
    "here too also".split()
)
COLOUR_WORDS = frozenset(
    "red orange yellow green blue purple pink brown black white grey gray silver gold "
    "golden beige tan navy teal maroon violet".split()
)
