"""Language detection on synthetic speech: qwhisper vs whisper.cpp on espeak-ng passages.

    python benchmarks/langid_espeak.py [--model base] [--styles plain slow f3 klatt festival] [--langs de fr ...]
        [--out langid.json]

The only non-English speech offline is two real files (shared/data/speech: es, zh); this adds
espeak-ng 1.51 speech in 25 languages and Festival speech in 5 of them. Each language reads the
same four-sentence passage (a neighbour, her dog, rain, a café, a new library), written natively
in that language (PASSAGES, English first as the control; 16-31 s, Mandarin 36-42 s of which the
first 30 s count). Every espeak voice is rendered in a few styles, the same for every language
(STYLES: the default voice at 175 words/min, slowed to 150, the female variant f3 at 150, the
Klatt synthesiser at 150); MBROLA voices would sound better but their databases are not in
Debian main. The style "festival" renders the languages that have a Festival voice (FESTIVAL).

Detection: qwhisper.detect_language.language_probabilities (openai's detect_language: the mel of
the first 30 s with 30 s of silence after the audio, the logits at <|startoftranscript|> restricted
to the language tokens) and pywhispercpp's auto_detect_language on the same GGML file. Prints a
markdown table (top-1 and its probability per engine, per style) and a summary line per style
(with the largest difference between the two engines' probabilities of any language).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Whisper's language code: espeak-ng voice, passage (the same story in each language). "fr", not
# "fr-fr": espeak-ng 1.51 drops a variant (+f3) given after that voice name.
PASSAGES: dict[str, tuple[str, str]] = {
    "en": ("en-us", ("Every morning my neighbour walks her dog along the river. Yesterday it started to rain, so "
           "she stopped at the small café near the bridge and ordered a hot coffee. The owner told her that "
           "the new library opens next week, and that children will be able to borrow books for free. She was "
           "very happy, because her grandson loves to read.")),
    "de": ("de", ("Jeden Morgen geht meine Nachbarin mit ihrem Hund am Fluss spazieren. Gestern fing es an zu "
           "regnen, also ging sie in das kleine Café an der Brücke und bestellte einen heißen Kaffee. Der "
           "Besitzer erzählte ihr, dass die neue Bibliothek nächste Woche öffnet und dass Kinder dort kostenlos "
           "Bücher ausleihen können. Sie freute sich sehr, denn ihr Enkel liest sehr gern.")),
    "fr": ("fr", ("Chaque matin, ma voisine promène son chien le long de la rivière. Hier, il a commencé à "
           "pleuvoir, alors elle s'est arrêtée au petit café près du pont et a commandé un café chaud. Le "
           "patron lui a dit que la nouvelle bibliothèque ouvrira la semaine prochaine, et que les enfants "
           "pourront emprunter des livres gratuitement. Elle était très contente, parce que son petit-fils "
           "adore lire.")),
    "es": ("es", ("Todas las mañanas, mi vecina pasea a su perro por la orilla del río. Ayer empezó a llover, así "
           "que se detuvo en la pequeña cafetería junto al puente y pidió un café caliente. El dueño le dijo "
           "que la nueva biblioteca abrirá la semana que viene, y que los niños podrán llevarse libros "
           "prestados gratis. Se puso muy contenta, porque a su nieto le encanta leer.")),
    "it": ("it", ("Ogni mattina la mia vicina porta a spasso il suo cane lungo il fiume. Ieri ha cominciato a "
           "piovere, così si è fermata al piccolo bar vicino al ponte e ha ordinato un caffè caldo. Il "
           "proprietario le ha detto che la nuova biblioteca aprirà la settimana prossima, e che i bambini "
           "potranno prendere in prestito i libri gratuitamente. Era molto contenta, perché a suo nipote piace "
           "tanto leggere.")),
    "pt": ("pt", ("Todas as manhãs, a minha vizinha passeia o cão ao longo do rio. Ontem começou a chover, por "
           "isso ela parou no pequeno café perto da ponte e pediu um café quente. O dono disse-lhe que a nova "
           "biblioteca abre na próxima semana, e que as crianças vão poder levar livros emprestados de graça. "
           "Ela ficou muito contente, porque o neto dela adora ler.")),
    "nl": ("nl", ("Elke ochtend laat mijn buurvrouw haar hond uit langs de rivier. Gisteren begon het te regenen, "
           "dus ging ze naar het kleine café bij de brug en bestelde een warme koffie. De eigenaar vertelde "
           "haar dat de nieuwe bibliotheek volgende week opengaat, en dat kinderen er gratis boeken kunnen "
           "lenen. Ze was erg blij, want haar kleinzoon leest heel graag.")),
    "sv": ("sv", ("Varje morgon går min granne ut med sin hund längs floden. I går började det regna, så hon "
           "stannade vid det lilla kaféet nära bron och beställde en kopp varmt kaffe. Ägaren berättade att det "
           "nya biblioteket öppnar nästa vecka, och att barn kommer att kunna låna böcker gratis. Hon blev "
           "mycket glad, eftersom hennes barnbarn älskar att läsa.")),
    "tr": ("tr", ("Her sabah komşum köpeğini nehir kenarında gezdirir. Dün yağmur yağmaya başladı, bu yüzden "
           "köprünün yanındaki küçük kafede durdu ve sıcak bir kahve sipariş etti. Kafenin sahibi ona yeni "
           "kütüphanenin gelecek hafta açılacağını ve çocukların ücretsiz kitap ödünç alabileceğini söyledi. "
           "Çok sevindi, çünkü torunu okumayı çok seviyor.")),
    "pl": ("pl", ("Każdego ranka moja sąsiadka wyprowadza psa na spacer wzdłuż rzeki. Wczoraj zaczęło padać, "
           "więc zatrzymała się w małej kawiarni przy moście i zamówiła gorącą kawę. Właściciel powiedział "
           "jej, że nowa biblioteka zostanie otwarta w przyszłym tygodniu i że dzieci będą mogły za darmo "
           "wypożyczać książki. Bardzo się ucieszyła, bo jej wnuk uwielbia czytać.")),
    "ru": ("ru", ("Каждое утро моя соседка гуляет с собакой вдоль реки. Вчера начался дождь, и она зашла в "
           "маленькое кафе у моста и заказала горячий кофе. Хозяин рассказал ей, что новая библиотека "
           "откроется на следующей неделе и что дети смогут брать книги бесплатно. Она очень обрадовалась, "
           "потому что её внук очень любит читать.")),
    "fi": ("fi", ("Joka aamu naapurini ulkoiluttaa koiraansa joen rannalla. Eilen alkoi sataa, joten hän poikkesi "
           "pieneen kahvilaan sillan vieressä ja tilasi kuuman kahvin. Omistaja kertoi hänelle, että uusi "
           "kirjasto avataan ensi viikolla ja että lapset voivat lainata kirjoja ilmaiseksi. Hän ilahtui "
           "kovasti, koska hänen lapsenlapsensa rakastaa lukemista.")),
    "cs": ("cs", ("Každé ráno venčí moje sousedka svého psa podél řeky. Včera začalo pršet, a tak se zastavila v "
           "malé kavárně u mostu a objednala si horkou kávu. Majitel jí řekl, že nová knihovna se otevře "
           "příští týden a že si tam děti budou moci zdarma půjčovat knihy. Měla velkou radost, protože její "
           "vnuk moc rád čte.")),
    "da": ("da", ("Hver morgen går min nabo tur med sin hund langs floden. I går begyndte det at regne, så hun "
           "gik ind på den lille café ved broen og bestilte en kop varm kaffe. Ejeren fortalte hende, at det "
           "nye bibliotek åbner i næste uge, og at børn kan låne bøger gratis. Hun blev meget glad, fordi "
           "hendes barnebarn elsker at læse.")),
    "no": ("nb", ("Hver morgen går naboen min tur med hunden sin langs elva. I går begynte det å regne, så hun "
           "stakk innom den lille kafeen ved brua og bestilte en kopp varm kaffe. Eieren fortalte henne at det "
           "nye biblioteket åpner neste uke, og at barn kan låne bøker gratis. Hun ble veldig glad, fordi "
           "barnebarnet hennes elsker å lese.")),
    "hu": ("hu", ("Minden reggel a szomszédom sétálni viszi a kutyáját a folyó mentén. Tegnap elkezdett esni az "
           "eső, ezért betért a híd melletti kis kávézóba, és rendelt egy forró kávét. A tulajdonos elmondta "
           "neki, hogy az új könyvtár jövő héten nyílik meg, és hogy a gyerekek ingyen kölcsönözhetnek "
           "könyveket. Nagyon örült, mert az unokája imád olvasni.")),
    "ro": ("ro", ("În fiecare dimineață, vecina mea își plimbă câinele de-a lungul râului. Ieri a început să "
           "plouă, așa că s-a oprit la cafeneaua mică de lângă pod și a comandat o cafea fierbinte. "
           "Proprietarul i-a spus că noua bibliotecă se deschide săptămâna viitoare și că copiii vor putea "
           "împrumuta cărți gratuit. S-a bucurat foarte mult, pentru că nepotului ei îi place mult să citească.")),
    "el": ("el", ("Κάθε πρωί η γειτόνισσά μου βγάζει βόλτα τον σκύλο της δίπλα στο ποτάμι. Χθες άρχισε να "
           "βρέχει, οπότε σταμάτησε στο μικρό καφέ κοντά στη γέφυρα και παρήγγειλε έναν ζεστό καφέ. Ο "
           "ιδιοκτήτης της είπε ότι η νέα βιβλιοθήκη ανοίγει την επόμενη εβδομάδα και ότι τα παιδιά θα "
           "μπορούν να δανείζονται βιβλία δωρεάν. Χάρηκε πολύ, γιατί ο εγγονός της λατρεύει το διάβασμα.")),
    "uk": ("uk", ("Щоранку моя сусідка вигулює собаку вздовж річки. Учора почався дощ, тож вона зайшла до "
           "маленької кав'ярні біля мосту й замовила гарячу каву. Власник розповів їй, що нова бібліотека "
           "відкриється наступного тижня і що діти зможуть безкоштовно брати книжки. Вона дуже зраділа, бо її "
           "онук дуже любить читати.")),
    "ca": ("ca", ("Cada matí, la meva veïna passeja el gos vora el riu. Ahir va començar a ploure, així que es va "
           "aturar a la petita cafeteria del costat del pont i va demanar un cafè calent. El propietari li va "
           "dir que la nova biblioteca obrirà la setmana que ve, i que els nens podran agafar llibres en "
           "préstec gratuïtament. Es va posar molt contenta, perquè al seu nét li encanta llegir.")),
    "id": ("id", ("Setiap pagi tetangga saya mengajak anjingnya berjalan-jalan di sepanjang sungai. Kemarin hujan "
           "mulai turun, jadi dia mampir ke kafe kecil di dekat jembatan dan memesan kopi panas. Pemiliknya "
           "mengatakan bahwa perpustakaan baru akan dibuka minggu depan, dan anak-anak bisa meminjam buku "
           "secara gratis. Dia sangat senang, karena cucunya suka sekali membaca.")),
    "hi": ("hi", ("हर सुबह मेरी पड़ोसन अपने कुत्ते को नदी के किनारे घुमाने ले जाती है। कल बारिश होने लगी, तो वह पुल के पास "
           "वाले छोटे कैफ़े में रुकी और एक गरम कॉफ़ी मँगाई। मालिक ने उसे बताया कि नया पुस्तकालय अगले हफ़्ते खुलेगा, और "
           "बच्चे वहाँ से मुफ़्त में किताबें ले सकेंगे। वह बहुत ख़ुश हुई, क्योंकि उसके पोते को पढ़ना बहुत पसंद है।")),
    "mr": ("mr", ("दररोज सकाळी माझी शेजारीण तिच्या कुत्र्याला नदीकाठी फिरायला नेते. काल पाऊस सुरू झाला, म्हणून ती "
           "पुलाजवळच्या छोट्या कॅफेमध्ये थांबली आणि गरम कॉफी मागवली. मालकाने तिला सांगितले की नवीन ग्रंथालय पुढच्या "
           "आठवड्यात उघडणार आहे, आणि मुलांना तिथून मोफत पुस्तके घेता येतील. ती खूप खूश झाली, कारण तिच्या नातवाला "
           "वाचायला खूप आवडते.")),
    "te": ("te", ("ప్రతి ఉదయం మా పొరుగింటావిడ తన కుక్కను నది ఒడ్డున నడిపిస్తుంది. నిన్న వర్షం మొదలైంది, అందుకే ఆమె "
           "వంతెన దగ్గర ఉన్న చిన్న కాఫీ షాపులో ఆగి, వేడి కాఫీ ఆర్డర్ చేసింది. కొత్త గ్రంథాలయం వచ్చే వారం తెరుస్తారని, "
           "పిల్లలు అక్కడ ఉచితంగా పుస్తకాలు తీసుకోవచ్చని యజమాని ఆమెకు చెప్పాడు. ఆమె చాలా సంతోషించింది, ఎందుకంటే ఆమె "
           "మనవడికి చదవడం అంటే చాలా ఇష్టం.")),
    "zh": ("cmn", ("每天早上，我的邻居都会沿着河边遛狗。昨天开始下雨了，所以她在桥边的小咖啡馆停了下来，点了一杯"
           "热咖啡。老板告诉她，新图书馆下个星期开放，孩子们可以免费借书。她非常高兴，因为她的孙子很喜欢看书。")),
}

# espeak-ng renderings, the same for every language: (voice suffix, words per minute, pitch 0-99)
STYLES: dict[str, tuple[str, int, int]] = {
    "plain": ("", 175, 50),  # espeak-ng's defaults
    "slow": ("", 150, 50),
    "f3": ("+f3", 150, 50),  # a female variant
    "klatt": ("+klatt", 150, 50),  # the Klatt formant synthesiser instead of espeak's own
}

# Festival's voices in Debian main (diphone, cluster-unit and HTS synthesis, closer to recorded
# speech than espeak's formants), where the language has one: voice, text encoding it reads.
# `apt-get install festival festvox-ru festvox-ca-ona-hts festvox-czech-dita festvox-suopuhe-lj
# festvox-italp16k`; the style "festival" renders these languages only.
FESTIVAL: dict[str, tuple[str, str]] = {
    "ru": ("voice_msu_ru_nsh_clunits", "utf-8"),
    "ca": ("voice_upc_ca_ona_hts", "latin-1"),
    "cs": ("voice_czech_dita", "iso-8859-2"),
    "fi": ("voice_suo_fi_lj_diphone", "latin-1"),
    "it": ("voice_lp_diphone", "latin-1"),
}


def festival(path: Path, lang: str) -> Path:
    """Write PASSAGES[lang] spoken by FESTIVAL[lang] to path (16 kHz mono WAV)."""
    if shutil.which("text2wave") is None:
        raise RuntimeError("festival (text2wave) is not installed")
    voice, encoding = FESTIVAL[lang]
    text = path.with_suffix(".txt")
    text.write_bytes(PASSAGES[lang][1].encode(encoding))
    subprocess.run(["text2wave", "-eval", f"({voice})", str(text), "-o", str(path)], check=True, capture_output=True)
    return path


def espeak(path: Path, lang: str, style: str = "slow") -> Path:
    """Write PASSAGES[lang] spoken in STYLES[style] to path (22.05 kHz mono WAV)."""
    if style == "festival":
        return festival(path, lang)
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed")
    voice, text = PASSAGES[lang]
    suffix, speed, pitch = STYLES[style]
    subprocess.run(["espeak-ng", "-v", voice + suffix, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def main(argv: list[str] | None = None) -> int:
    import torch
    from pywhispercpp.model import Model

    from qwhisper.audio import load_audio
    from qwhisper.detect_language import language_probabilities
    from qwhisper.models import resolve_model
    from qwhisper.transcribe import WhisperModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="base")
    p.add_argument("--styles", nargs="+", default=list(STYLES), choices=[*STYLES, "festival"])
    p.add_argument("--langs", nargs="+", default=list(PASSAGES), choices=list(PASSAGES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for every probability")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = resolve_model(args.model)
    ours = WhisperModel(path, "cpu")
    cpp = Model(str(path), n_threads=args.threads, print_progress=False, print_realtime=False,
                redirect_whispercpp_logs_to=None)
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for lang in args.langs:
            for style in args.styles:
                if style == "festival" and lang not in FESTIVAL:
                    continue
                wav = espeak(Path(tmp) / f"{lang}-{style}.wav", lang, style)
                audio = load_audio(wav)
                ranked = language_probabilities(ours, audio)
                (cpp_lang, cpp_p), cpp_all = cpp.auto_detect_language(audio)
                diff = max(abs(p - float(cpp_all[c])) for c, p in ranked)  # over every language
                rows.append({"lang": lang, "style": style, "seconds": round(len(audio) / 16000, 1),
                             "qwhisper": ranked[:3], "whisper_cpp": [cpp_lang, float(cpp_p)],
                             "max_abs_diff": diff})
                print(f"{lang} {style:6s} {rows[-1]['seconds']:5.1f} s  qwhisper {ranked[0][0]} {ranked[0][1]:.3f}"
                      f"  whisper.cpp {cpp_lang} {cpp_p:.3f}", file=sys.stderr, flush=True)

    print("| language | voice | seconds | " + " | ".join(f"{s}: qwhisper | {s}: whisper.cpp" for s in args.styles) + " |")
    print("| --- | --- | --- | " + " | ".join("--- | ---" for _ in args.styles) + " |")
    for lang in args.langs:
        cells = []
        mine = {r["style"]: r for r in rows if r["lang"] == lang}
        for style in args.styles:
            if style not in mine:
                cells += ["", ""]
                continue
            (q, qp), (c, cp) = mine[style]["qwhisper"][0], mine[style]["whisper_cpp"]
            cells += [f"{q} {qp:.2f}" if q == lang else f"**{q}** {qp:.2f}",
                      f"{c} {cp:.2f}" if c == lang else f"**{c}** {cp:.2f}"]
        seconds = next(iter(mine.values()))["seconds"]
        print(f"| {lang} | {PASSAGES[lang][0]} | {seconds:.0f} | " + " | ".join(cells) + " |")
    for style in args.styles:
        mine = [r for r in rows if r["style"] == style]
        ok_q = sum(r["qwhisper"][0][0] == r["lang"] for r in mine)
        ok_c = sum(r["whisper_cpp"][0] == r["lang"] for r in mine)
        agree = sum(r["qwhisper"][0][0] == r["whisper_cpp"][0] for r in mine)
        diff = max(r["max_abs_diff"] for r in mine)
        print(f"{style}: qwhisper {ok_q}/{len(mine)} right, whisper.cpp {ok_c}/{len(mine)}, "
              f"same top-1 {agree}/{len(mine)}, max |p - p_cpp| {diff:.3f}", file=sys.stderr)
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
