// A synthetic stand-in for the SMS Spam Collection as it is downloaded (spam.csv), for the
// "real messy CSV" tests: the same shape, none of its text.
//
//   node scripts/make_sms_fixture.mjs   → test/fixtures/sms/sms.csv (340 rows), sms-test.csv (60)
//
// The shape, as the original has it: header `label,masseges,,,` (a misspelt column and three
// unnamed ones), CRLF line ends, five fields on every row; messages quoted only when they must
// be (commas, quotes doubled, a line break inside quotes), some unquoted with trailing spaces;
// a few messages split across the unnamed columns at a comma, as a bad export left them; mojibake
// from text decoded twice (Â£, â€™, Ã©, Ì_ …, all valid UTF-8); messages from 2 to ~900 bytes,
// about a quarter longer than 120 bytes; 'ham' and 'spam' labels, about one in seven spam. Spam
// is spam from its first sentence to its last, as in the original, so either end tells.
// Deterministic: a fixed seed; the test rows share no message with the training rows.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const OUT = join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'fixtures', 'sms');

function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(20240914);
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const digits = (n) => Array.from({ length: n }, () => Math.floor(rand() * 10)).join('');

const HAM = [
  () => `${pick(['Ok', 'Okay', 'K', 'Ok lar'])}... ${pick(['Joking wif u oni', 'see u there', "i'll call later", 'going home now'])}...`,
  () => `${pick(['Hey', 'Hi', 'Yo', 'Hello'])} ${pick(['babe', 'dude', 'mate', 'sis'])}, ${pick(['where r u', 'how was ur day', 'did u eat', 'u free tonight'])}?`,
  () => `${pick(['I', 'Me', 'We'])} ${pick(['reach', 'leaving', 'stuck in traffic', 'almost there'])} ${pick(['in 5 min', 'soon', 'now', 'after class'])}. ${pick(['Wait for me', 'Dun go first', 'Save me a seat', 'Call me when u see this'])}.`,
  () => `${pick(['Sorry', 'Sry', 'Soz'])}, ${pick(["I'll call later", "can't talk now", 'in a meeting', 'phone was on silent'])}`,
  () => `${pick(['Did u', 'Have u', 'Can u'])} ${pick(['finish the assignment', 'book the tickets', 'buy milk', 'ask ur mum'])}? ${pick(['Lemme know', 'Tell me asap', 'No rush', 'Thx'])}`,
  () => `${pick(['Happy birthday', 'Good morning', 'Good night', 'Take care'])}${pick(['!', ' :)', '!!', ' ;-)'])} ${pick(['Love u', 'Miss u', 'Sleep well', 'Have fun'])}`,
  () => `${pick(['Mum says', 'Dad says', 'Boss says', 'Teacher says'])} ${pick(['dinner at 7', 'bring the car back', 'meeting moved to 3', 'test is on Mon'])}. ${pick(['Dun be late', 'Ok?', 'Pls reply', 'Haha'])}`,
  () => `${pick(['U know', 'Guess what', 'Btw', 'Oh ya'])}, ${pick(['the movie was gd', 'I saw ur bro', 'the shop closed', 'it rained so hard'])} ${pick(['lol', 'haha', 'sian', 'wah'])}`,
  () => `"${pick(['Where', 'When', 'Who'])}" ${pick(['u mean', 'is that', 'did he say'])}? ${pick(['Confused', 'Huh', 'Explain pls'])}`,
  () => `Caf${pick(['Ã©', 'é'])} ${pick(['at 4', 'later', 'tmr'])}? ${pick(['Itâ€™s on me', 'Itâ€™s my turn', 'U pay ya'])}`,
];
const SPAM = [
  () => `${pick(['FREE', 'Free', 'WINNER!!'])} ${pick(['entry', 'msg', 'ringtone'])}: ${pick(['Txt', 'Text', 'Reply'])} ${pick(['WIN', 'CLAIM', 'YES'])} to ${digits(5)} ${pick(['to receive', 'for'])} ${pick(['Â£1000 cash', 'a Nokia phone', 'a Â£500 prize', 'å£2000'])}. ${pick(['T&C apply', 'T&Cs www.win.co.uk', '18+ only'])}`,
  () => `${pick(['URGENT!', 'Congratulations!', 'IMPORTANT:'])} ${pick(['You have won', 'Your mobile number has won', 'You are selected for'])} ${pick(['a 2 week holiday', 'Â£900 prize', 'a guaranteed award', 'å£5000 cash'])}. ${pick(['Call', 'Claim on', 'Ring'])} 09${digits(9)} ${pick(['now', 'b4 it expires', 'from land line'])}. ${pick(['Claim code', 'Ref', 'ID'])} ${pick(['KL', 'XR', 'QJ'])}${digits(3)}`,
  () => `${pick(['Had your mobile', 'Your contract is'])} ${pick(['11 months or more', 'due for upgrade'])}? U R entitled to ${pick(['update to the latest colour mobiles', 'a FREE camera phone'])} with ${pick(['FREE', 'free'])} ${pick(['minutes', 'texts'])}. Call 0800${digits(7)} FREE`,
  () => `${pick(['SIX chances', 'Last chance', '2nd attempt'])} to win CASH! ${pick(['From 100 to 20,000 pounds', 'Up to Â£5000'])} txt> ${pick(['CSH11', 'PRIZE', 'GO'])} and send to ${digits(5)}. Cost 150p/day, ${pick(['6days', '16+', 'TsandCs apply'])} Reply HL ${pick(['4 info', 'for info'])}`,
  () => `${pick(['Dear customer', 'Valued subscriber', 'Dear Voucher Holder'])}, ${pick(['you are awarded', 'to claim your', 'your reward of'])} ${pick(['a Â£2000 bonus', 'free Ì_ bonus tones', 'a Â£350 voucher'])}. ${pick(['Call', 'Visit'])} ${pick([`09${digits(9)}`, 'www.dbuk.net', 'www.ringtones.co.uk'])} ${pick(['now!', 'to claim!', 'b4 Fri!'])} Stop? txt STOP`,
  () => `${pick(['XXXMobileMovieClub', 'SunshineQuiz', 'PhoneBoy'])}: ${pick(['To use your credit', 'Wkly comp', 'Win a top Sony DVD player'])}, ${pick(['click the WAP link', 'if u know which country', 'txt GO to'])} ${pick([`${digits(5)}`, 'http://wap.xxx.com/?n=QJKGIGHJ', 'the next txt'])} ${pick(['now', 'Â£1.50/wk', 'only 150p'])}`,
];

const sentence = (pool) => pick(pool)();
/** Sentences joined until the target length is reached: chatter for ham, offers for spam. */
function message(label) {
  const pool = label === 'spam' ? SPAM : HAM;
  const r = rand();
  const target = r < 0.03 ? 2 : r < 0.78 ? 15 + rand() * 70 : r < 0.96 ? 120 + rand() * 280 : 400 + rand() * 500;
  let m = sentence(pool);
  while (Buffer.byteLength(m) < target) m += pick([' ', ' ', '  ', '. ', ' - ']) + sentence(pool);
  if (r < 0.03) m = pick(label === 'spam' ? ['WIN Â£', 'FREE!'] : ['Ok', 'K', 'Yup', ':)']);
  // The longest SMS in the original is 910 characters.
  while (Buffer.byteLength(m) > 900) m = m.slice(0, m.lastIndexOf(' '));
  if (rand() < 0.02) m = m.replace(' ', '\n');
  return m;
}

const quote = (s) => `"${s.replace(/"/g, '""')}"`;
/** One CSV record of five fields, quoted as the original is: only where needed, and sometimes split. */
function record(label, m) {
  if (m.includes(',') && rand() < 0.03) {
    // A message broken at a comma into the unnamed columns.
    const cut = m.indexOf(',');
    const rest = m.slice(cut + 1);
    return [label, quote(m.slice(0, cut)), quote(rest), '', ''].join(',');
  }
  const field = /[",\n]/.test(m) ? quote(m) : m + (rand() < 0.05 ? ' ' : '');
  return [label, field, '', '', ''].join(',');
}

function rows(n, seen) {
  const out = [];
  while (out.length < n) {
    const label = rand() < 0.15 ? 'spam' : 'ham';
    const m = message(label);
    if (seen.has(m)) continue;
    seen.add(m);
    out.push(record(label, m));
  }
  return out;
}

const seen = new Set();
const header = 'label,masseges,,,';
mkdirSync(OUT, { recursive: true });
for (const [file, n] of [['sms.csv', 340], ['sms-test.csv', 60]]) {
  writeFileSync(join(OUT, file), [header, ...rows(n, seen)].join('\r\n') + '\r\n');
  console.log(`${file}: ${n} rows`);
}
